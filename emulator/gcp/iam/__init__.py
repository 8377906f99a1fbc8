"""IAM: v1 service accounts (`spec`, `backend`, `routes`) and resource policies (`policy`)."""

from emulator.gcp.iam.backend import IamBackend
from emulator.gcp.iam.routes import routes
from emulator.gcp.iam.spec import SERVICE, sa_email

__all__ = ["SERVICE", "IamBackend", "routes", "sa_email"]
