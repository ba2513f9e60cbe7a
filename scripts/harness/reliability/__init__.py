"""Reliability suite: a real TorchServe on free loopback ports, over a store built by the
real archiver from a real checkpoint, put through bounded scenarios. Each scenario is a function
returning a typed result with its own pass/fail against the targets:

  bad_inputs   ~40 kinds of bad or odd requests: bad ones get a 4xx naming the problem, valid but
               odd images get the in-process answer; sent one by one (each followed by a good
               request) and then all at once mixed with good ones; no worker restart
  held_load    N concurrent clients for S seconds: zero 5xx, every answer is its request's
  overload     a burst beyond job_queue_size: fast 503s, then serving again by itself
  worker_fault SIGKILL the Python worker under load: serving again within 15 s, failures no more
               than the requests in flight
  rollout      register version 2, make it default, unregister version 1 under load: zero failures

    python -m scripts.harness.reliability --checkpoint runs/fashion-mnist/model.pt            # full
    python -m scripts.harness.reliability --checkpoint runs/fashion-mnist/model.pt --quick    # fast subset

Results: <out>/results.json and results.md (+ the server's logs); `--record docs/reliability.md`
also writes the Markdown with the machine, command and date.

Modules: settings (bounds and targets), inputs (the bad and odd requests), workload (images, the
in-process reference answers, the HTTP sender for scripts/harness/load.py), scenarios (one function
and one result type each), suite (the store, the run, the results), cli.
"""
