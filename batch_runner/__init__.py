"""batch_runner: run batches of Luma Ray video jobs on fal.ai and account for every cent."""
