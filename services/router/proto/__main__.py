"""`python -m services.router.proto`: generate the gRPC code now (an image build step)."""

from services.router.proto import generate

if __name__ == "__main__":
    print(generate())
