"""`make bench`: the same model and images through every serving path, measured in one run.

    python -m scripts.harness.bench [--duration 4] [--concurrency 1 2 4 8 16 32] [--out build/bench]
"""
