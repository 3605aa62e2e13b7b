"""The doors mail and requests come in by: today the milter; each new daemon gets a module here."""
