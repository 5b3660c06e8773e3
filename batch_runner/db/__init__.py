"""The job table: models, engine and migrations, and the repository where all SQL lives."""
