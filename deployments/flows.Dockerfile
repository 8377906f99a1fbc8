# The flow runner for the prefect-gcp cloud-run-v2 work pool: this repository on Prefect's image.
# It orchestrates only (1 vCPU, 2 GiB); the GPU belongs to the Ollama service the deploy flow makes.
FROM prefecthq/prefect:3.9.1-python3.11
WORKDIR /opt/ollama-cloudrun
COPY pyproject.toml requirements.lock README.md ./
COPY flows ./flows
COPY tasks ./tasks
COPY ollama-backend ./ollama-backend
COPY prefect.yaml ./
COPY deployments ./deployments
# The emulator and the CPU model are for local runs only: the core dependencies suffice here.
RUN pip install --no-cache-dir .
