# The image for scheduler and workers (docker-compose.yml, Kubernetes). Build:
#   docker build -t nnsweep .
FROM python:3.11-slim
ENV OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONUNBUFFERED=1
WORKDIR /opt/nnsweep
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
RUN pip install --no-cache-dir ".[s3]"
# Workers write stores to a path mounted identically on client and workers, or to s3://.
