# PyTorch image: the train stage alone (no vLLM), e.g. as a job on a training cluster.
#   docker build -f containers/train.Dockerfile -t mcckd-train .
#   docker run --gpus all mcckd-train python -m mcckd train --settings t.json --in trainset=/runs/materialize --out /runs/t
FROM pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime
WORKDIR /app
COPY containers/requirements-slim.txt containers/requirements-train.txt containers/
RUN pip install --no-cache-dir -r containers/requirements-slim.txt -r containers/requirements-train.txt
COPY . .
RUN pip install --no-cache-dir --no-deps --no-build-isolation -e .
ENV MCCKD_HOME=/app
CMD ["python", "-m", "mcckd", "train", "--help"]
