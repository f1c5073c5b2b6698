"""The offsite copy of the archive in an S3-compatible bucket (docs/ARCHITECTURE.md, "Offsite").

upload - what is uploaded when, verified and resumable (OFFSITE.json); capture's background thread
"""
