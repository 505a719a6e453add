"""What the gateway keeps: the database (one schema, Alembic migrations), the job store, inputs and
results (local dir or S3), the result cache."""
