mod signer;
