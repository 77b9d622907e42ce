"""A Tune callback for tests: appends each run's reported result to the JSON-lines file $RECORD_TO."""
import json
import os

from ray.tune import Callback


class Recorder(Callback):
    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "run_key" in result:
            with open(os.environ["RECORD_TO"], "a") as f:
                f.write(json.dumps({k: result[k] for k in ("run_key", "accuracy", "ece") if k in result}) + "\n")
