"""The wire: request lines parsed and checked (txtar archives too), events encoded, the line
connection and TLS half-close.  Imports only the sandbox layers below it and the shared values."""
