"""Artifact Registry v1: repositories and the Docker images Cloud Build pushes into them.

`spec` (names, references, checks), `backend` (state and operations, no HTTP), `routes`.
"""

from emulator.gcp.artifact_registry.backend import ArtifactRegistryBackend, DockerImage
from emulator.gcp.artifact_registry.routes import routes
from emulator.gcp.artifact_registry.spec import SERVICE

__all__ = ["SERVICE", "ArtifactRegistryBackend", "DockerImage", "routes"]
