"""Tools a model calls: the search tool over the document index (search)."""
