"""What goes on the box: its layout, the spec built from the settings, the pyinfra deploys, facts and operations."""
