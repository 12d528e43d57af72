"""What a job runs: a training round and a ranking round."""
