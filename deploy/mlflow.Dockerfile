# The MLflow tracking server with its basic-auth app, PostgreSQL and S3 drivers; the same MLflow as the project's.
FROM python:3.11-slim
RUN pip install --no-cache-dir "mlflow[auth]==3.17.2" psycopg2-binary boto3
