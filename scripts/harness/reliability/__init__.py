"""Reliability suite: each runtime in turn (a real TorchServe, then the KServe-native runtime) on
free loopback ports, over a store built by the real archiver from a real checkpoint, put through
bounded scenarios. Each scenario is a function of a server under test (servers.py) returning a
typed result with its own pass/fail against the targets:

  bad_inputs    ~40 kinds of bad or odd requests in the runtime's routes: bad ones get a 4xx naming
                the problem, valid but odd images get the in-process answer; sent one by one (each
                followed by a good request) and then all at once mixed with good ones; no restart
  held_load     N concurrent clients for S seconds: zero 5xx, every answer is its request's
  overload      a burst beyond the queue: fast 503s, then serving again by itself
  process_fault SIGKILL under load (TorchServe: one worker; KServe-native: its process, then started
                again as the kubelet would): serving again within 15 s, no wrong answer, failures
                bounded (the requests in flight; or only while the runtime was down)
  rollout       version 2 replaces version 1 under load (TorchServe: its management API;
                KServe-native: a second runtime, the endpoint moved, the old one drained): zero
                failures, no old answer after the switch

    python -m scripts.harness.reliability --checkpoint runs/fashion-mnist/model.pt            # full
    python -m scripts.harness.reliability --checkpoint runs/fashion-mnist/model.pt --quick    # fast subset
    python -m scripts.harness.reliability ... --runtime kserve-native                         # one runtime

Results: <out>/results.json and results.md (one table, a column per runtime, + the servers' logs);
`--record docs/reliability.md` also writes the Markdown with the machine, command and date.

Modules: settings (bounds and targets), servers (each runtime as the scenarios see it), inputs (the
bad and odd requests), workload (images, the in-process reference answers, the HTTP sender for
scripts/harness/load.py), scenarios (one function and one result type each), suite (the store, the
run, the results), cli.
"""
