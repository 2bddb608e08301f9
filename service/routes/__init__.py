"""HTTP routes: thin adapters from requests to the logic layer; each module exposes `router`."""
