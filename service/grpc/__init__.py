"""The gRPC transport: the Open Inference Protocol's `inference.GRPCInferenceService` over the
same data plane as HTTP (docs/architecture.md, docs/serving.md "gRPC").

`server` runs grpcio's asyncio server on the HTTP server's event loop (so a gRPC request and
a REST request can merge into one model run), checks keys, admits, maps errors to status
codes, counts and traces; `servicer` holds what each RPC means; `tensors` turns messages
into the data plane's tensors and back; `generated/` is what grpcio-tools writes from
`inference.proto` (`make proto`).
"""
