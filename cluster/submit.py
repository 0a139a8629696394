"""`ray submit` entry point: runs the candle-ray command line on the cluster's head node.

    ray submit --tmux cluster/ray.yaml cluster/submit.py -- tune ~/candle-ray/experiments/nt3.py --num-samples 64

Ray copies this file to the head and runs it with the head's Python, where candle-ray is installed
(cluster/ray.yaml's setup commands) and RAY_ADDRESS / MLFLOW_TRACKING_URI / CANDLE_RAY_STORAGE are set.
"""

from candle_ray.cli import main

if __name__ == "__main__":
    main(prog_name="candle-ray")
