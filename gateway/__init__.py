"""jobtoken-gateway: enforce GitLab's fine-grained permissions for CI/CD job tokens in front of an API."""

__all__ = ["__version__"]

__version__ = "0.1.0"
