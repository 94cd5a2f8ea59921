# Slim image: the Prefect server, the CPU worker and the cheap stages (holdout, judge, select, decontaminate,
# materialize, choose, export).
# No torch, no vLLM:  docker build -f containers/slim.Dockerfile -t mcckd-slim .
#   docker run mcckd-slim python -m mcckd judge --in samples=/runs/import --out /runs/judged
FROM python:3.11-slim
WORKDIR /app
COPY containers/requirements-slim.txt containers/
RUN pip install --no-cache-dir -r containers/requirements-slim.txt
COPY . .
RUN pip install --no-cache-dir --no-deps --no-build-isolation -e .
ENV MCCKD_HOME=/app
CMD ["python", "-m", "mcckd", "judge", "--help"]
