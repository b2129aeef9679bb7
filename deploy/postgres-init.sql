-- the MLflow server's database beside Dagster's (POSTGRES_DB)
CREATE DATABASE mlflow OWNER ft;
