"""The observer-driven engine: records of every resource, one loop per identity and workspace."""
