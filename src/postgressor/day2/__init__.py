"""Day-2 verbs run against a box that is up (backups: now, list, check, passphrase, restore; logs; host key)."""
