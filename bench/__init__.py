"""The benchmark: wrk against verdict, the obvious server and the in-process ceiling."""
