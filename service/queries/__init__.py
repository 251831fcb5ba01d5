"""Query modules: plain functions taking a connection, each running one named
statement of sql/queries and returning plain dicts."""
