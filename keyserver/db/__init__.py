"""Storage: SQLAlchemy models, the tenant-scoped session, and migrations."""
