"""The command-line interface: a thin layer that parses, calls the library and prints."""
