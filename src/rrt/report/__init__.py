"""The report: per-variant results into tables (`aggregate`) and figures (`figures`)."""
