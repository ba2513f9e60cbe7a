"""The KServe-native runtime: the same `.mar` files TorchServe serves, on `kserve.ModelServer`, with
the archive's own code path (handlers/), so each request gets TorchServe's bodies and metrics.

Transport to data plane to model, each in its own module:
  server.py         command line, loading the archives, starting the servers (`python -m scripts.runtime`)
  kserve_adapter.py the few kserve 0.21 methods copied to bind --host (tests/runtime check them
                    against the installed kserve)
  transport.py      our error bodies on REST and gRPC
  dataplane.py      kserve's DataPlane with raw-byte bodies and model metadata
  decode.py         kserve's decoded requests into handlers.inputs.ParsedRequest
  model.py          one kserve.Model per archive, micro-batched (batching.py)
  mar.py            reading a .mar's manifest

Its imports stay inside handlers/, this package and the shared settings (tests/runtime check the
closure), so its image needs none of the training or tooling dependencies.
"""
