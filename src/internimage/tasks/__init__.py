"""Command implementations behind ``internimage <command>`` (glue over the library; the library never imports this)."""
