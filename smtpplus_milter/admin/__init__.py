"""Administration use cases (users, verification, Postfix configuration): they take typed values
and return values; the command line only parses options and prints."""
