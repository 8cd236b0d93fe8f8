"""Offline checks of the deployment files (docker/, compose.yml, deploy/, k8s/); see deploy/check.py."""
