"""Command-line interface: parse, call the API, print (rich table or --json)."""
