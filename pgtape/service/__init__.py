"""The service: pgtape serve's parts."""
