from lens.cli import app

app(prog_name="lens")
