"""The process around the API: serving, data-dir locks, systemd, socket activation,
metrics, logging and periodic sidecars."""
