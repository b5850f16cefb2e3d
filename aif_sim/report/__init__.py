"""Results for people: rich tables and PNG plots, driven by the summary's metric descriptors."""
