//! Key generation and import: the object templates for RSA, AES-256 and EC P-256 versions.

use super::*;

/// DER of the P-256 curve OID (1.2.840.10045.3.1.7), the `CKA_EC_PARAMS` of P-256 keys.
pub(super) const P256_OID: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// What to generate.
#[derive(Clone, Copy)]
pub(super) enum Gen {
    Rsa(u32),
    EcP256,
    Aes256,
}

impl Inner {
    /// Generates version `number` of `name` on the token.
    pub(super) fn generate(
        &self,
        s: &Session,
        name: &str,
        number: u64,
        plan: Gen,
    ) -> Result<(), Fail> {
        let id = number.to_string().into_bytes();
        let bits = match plan {
            Gen::Rsa(bits) => bits,
            Gen::EcP256 => return self.generate_ec(s, name, id),
            Gen::Aes256 => {
                s.generate_key(
                    &Mechanism::AesKeyGen,
                    &[
                        Attribute::Token(true),
                        Attribute::Private(true),
                        Self::label(name),
                        Attribute::Id(id),
                        Attribute::ValueLen(32u64.into()),
                        Attribute::Sensitive(true),
                        Attribute::Extractable(false),
                        Attribute::Modifiable(true),
                        // Only what the provider does with it: AES key wrap (RFC 3394).
                        Attribute::Encrypt(false),
                        Attribute::Decrypt(false),
                        Attribute::Wrap(true),
                        Attribute::Unwrap(true),
                    ],
                )?;
                return Ok(());
            }
        };
        let public = [
            Attribute::Token(true),
            Attribute::Private(false),
            Self::label(name),
            Attribute::Id(id.clone()),
            Attribute::ModulusBits(u64::from(bits).into()),
            Attribute::PublicExponent(vec![0x01, 0x00, 0x01]),
            // Wrapping is RSA-OAEP encryption (done locally with the public key).
            Attribute::Encrypt(true),
            Attribute::Wrap(false),
            Attribute::Verify(false),
        ];
        let private = [
            Attribute::Token(true),
            Attribute::Private(true),
            Self::label(name),
            Attribute::Id(id),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Modifiable(true),
            // Unwrapping is RSA-OAEP decryption (C_Decrypt), nothing else.
            Attribute::Decrypt(true),
            Attribute::Unwrap(false),
            Attribute::Sign(false),
        ];
        s.generate_key_pair(&Mechanism::RsaPkcsKeyPairGen, &public, &private)?;
        Ok(())
    }

    /// An EC P-256 key pair: held only so that policies can see and refuse it. `CKA_DECRYPT`
    /// is set (and cleared to disable it) like on RSA keys, so the convention holds for it.
    pub(super) fn generate_ec(&self, s: &Session, name: &str, id: Vec<u8>) -> Result<(), Fail> {
        let public = [
            Attribute::Token(true),
            Attribute::Private(false),
            Self::label(name),
            Attribute::Id(id.clone()),
            Attribute::EcParams(P256_OID.to_vec()),
            Attribute::Verify(true),
        ];
        let private = [
            Attribute::Token(true),
            Attribute::Private(true),
            Self::label(name),
            Attribute::Id(id),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Modifiable(true),
            Attribute::Sign(true),
            Attribute::Decrypt(true),
        ];
        s.generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)?;
        Ok(())
    }

    /// `op` (a generation or import of version `number` of `name`), tried up to three times on
    /// `CKR_GENERAL_ERROR`: SoftHSM 2.6 with the file object store now and then fails an
    /// object creation that runs while other sessions touch token objects. Leftovers of a
    /// failed attempt are destroyed first.
    pub(super) fn retrying_general_error(
        s: &Session,
        name: &str,
        number: u64,
        op: impl Fn() -> Result<(), Fail>,
    ) -> Result<(), Fail> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match op() {
                Err(Fail::Token(cryptoki::error::Error::Pkcs11(
                    cryptoki::error::RvError::GeneralError,
                    _,
                ))) if attempt < 3 => {
                    let id = number.to_string().into_bytes();
                    for h in s.find_objects(&[Self::label(name), Attribute::Id(id)])? {
                        let _ = s.destroy_object(h);
                    }
                }
                other => return other,
            }
        }
    }

    /// Imports `key` as version `number` of `name` (private and public objects). On failure
    /// destroys whatever the token left behind (SoftHSM keeps half-built objects).
    pub(super) fn import(
        &self,
        s: &Session,
        name: &str,
        number: u64,
        key: &RsaPrivate,
    ) -> Result<(), Fail> {
        let Some([n, e, d, p, q, dp, dq, qinv]) = key.crt_components() else {
            return Err(Fail::Provider(ProviderError::new(
                K::InvalidRequest,
                "only two-prime RSA keys with CRT values can be imported",
            )));
        };
        let id = number.to_string().into_bytes();
        let private = vec![
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::KeyType(P11KeyType::RSA),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Modifiable(true),
            Attribute::Decrypt(true),
            Attribute::Unwrap(false),
            Attribute::Sign(false),
            Self::label(name),
            Attribute::Id(id.clone()),
            Attribute::Modulus(n.to_vec()),
            Attribute::PublicExponent(e.to_vec()),
            Attribute::PrivateExponent(d.to_vec()),
            Attribute::Prime1(p.to_vec()),
            Attribute::Prime2(q.to_vec()),
            Attribute::Exponent1(dp.to_vec()),
            Attribute::Exponent2(dq.to_vec()),
            Attribute::Coefficient(qinv.to_vec()),
        ];
        let public = [
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::KeyType(P11KeyType::RSA),
            Attribute::Token(true),
            Attribute::Private(false),
            Self::label(name),
            Attribute::Id(id.clone()),
            Attribute::Modulus(n.to_vec()),
            Attribute::PublicExponent(e.to_vec()),
            Attribute::Encrypt(true),
            Attribute::Wrap(false),
            Attribute::Verify(false),
        ];
        let r = s
            .create_object(&private)
            .and_then(|_| s.create_object(&public));
        // The template held copies of the private components; wipe them.
        for a in private {
            if let Attribute::PrivateExponent(mut v)
            | Attribute::Prime1(mut v)
            | Attribute::Prime2(mut v)
            | Attribute::Exponent1(mut v)
            | Attribute::Exponent2(mut v)
            | Attribute::Coefficient(mut v) = a
            {
                zeroize::Zeroize::zeroize(&mut v);
            }
        }
        if let Err(err) = r {
            if let Ok(left) = s.find_objects(&[Self::label(name), Attribute::Id(id)]) {
                for h in left {
                    let _ = s.destroy_object(h);
                }
            }
            let mut pe = token::map_error(&err, &format!("import of key {name}"));
            if pe.kind() == K::InvalidRequest {
                pe = ProviderError::new(
                    K::Unsupported,
                    format!("the token refused the import: {}", pe.message()),
                );
            }
            return Err(Fail::Provider(pe));
        }
        Ok(())
    }
}
