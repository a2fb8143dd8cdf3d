"""The TIPO service extension's code (a unique package name: every WebUI extension shares one sys.modules)."""
