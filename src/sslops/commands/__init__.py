"""User commands besides the stages: `sslops lineage`, `embed`, `report` and `fetch-data`."""
