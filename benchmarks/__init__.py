"""Side-by-side performance benchmarks: tricksweep against a bare loop, plain Ray Tune, Ray's
MLflow callback and Optuna, measured in one run on one machine.

    python -m benchmarks            # full run (~15 min on 2 CPUs), writes benchmarks/results/latest.json
    python -m benchmarks --quick    # a few minutes
    python -m benchmarks --smoke    # seconds per section, tiny sizes: checks every row is produced
"""
