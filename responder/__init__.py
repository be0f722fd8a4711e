"""falco-responder: Falco alerts in, safe Kubernetes responses out."""

__version__ = "0.1.0"
