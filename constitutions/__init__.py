"""The constitutions shipped with plumb (installed as the package plumb.constitutions)."""
