from .cli import app

if __name__ == "__main__":  # never on import: spawned worker processes import the main module
    app()
