# vLLM image: sample and evaluate (and the GPU worker, which runs them; it also trains, torch is here).
#   docker build -f containers/vllm.Dockerfile -t mcckd-vllm .
#   docker run --gpus all mcckd-vllm python -m mcckd sample --settings s.json --in questions=q.parquet --out /runs/s
FROM vllm/vllm-openai:v0.32.0
WORKDIR /app
COPY containers/requirements-slim.txt containers/requirements-train.txt containers/
RUN pip install --no-cache-dir -r containers/requirements-slim.txt -r containers/requirements-train.txt
COPY . .
RUN pip install --no-cache-dir --no-deps --no-build-isolation -e .
ENV MCCKD_HOME=/app
ENTRYPOINT []
CMD ["python", "-m", "mcckd", "sample", "--help"]
