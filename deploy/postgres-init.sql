-- Prefect's database beside MLflow's (POSTGRES_DB); runs once, when the volume is created.
CREATE DATABASE prefect;
