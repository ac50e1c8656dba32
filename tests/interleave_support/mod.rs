//! Support for `tests/interleavings.rs`: a seeded PRNG, the schedule's shared state (yield
//! points drawn from the seed, a global step counter, the history), and wrappers around the
//! account store and the tenant's key provider that yield a seeded number of times before and
//! after forwarding each call and log what they forwarded.
#![allow(dead_code, unreachable_pub)]

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::SystemTime;

use async_trait::async_trait;
use byok::account::{AccountRecord, KeyRole, StateKind};
use byok::provider::{KeyProperties, VaultProperties, WrapAlgorithm, WrappedKey};
use byok::store::{AccountStore, ChangeListener, InMemoryAccountStore};
use byok::{AccountId, Error, KeyProvider, ProviderError, ProviderErrorKind, SecretBytes};

/// The customer key's versions, imported: generating RSA keys per schedule would dominate the
/// run time. RSA-1024 under the RustCrypto backend, which keeps each unwrap cheap; RSA-2048
/// under the aws-lc backend, which refuses smaller keys. Never use such keys outside tests.
pub const PEMS: [&str; 4] = if cfg!(feature = "aws-lc") {
    PEMS_2048
} else {
    PEMS_1024
};

/// The size of the keys in [`PEMS`].
pub const PEM_BITS: u32 = if cfg!(feature = "aws-lc") { 2048 } else { 1024 };

/// RSA-1024 keys (PKCS#1).
const PEMS_1024: [&str; 4] = [
    "-----BEGIN RSA PRIVATE KEY-----\nMIICXQIBAAKBgQDm96DxXklWjpnqjjoBXay3Q+IcqbjD1gMXuaNDJghAc/PdXKAj\nET0CiADQJyE2pcueaQFfTKQtB7zBRRj9JFXh5StR8v6jTj88c+oMKP8I0eWaAx9C\nUZVlbXFnuza9zuzOmdRxRlF1OkntkOxmwrtTRvtojSDCHHtdkvWAmg8s7wIDAQAB\nAoGAU5O57n2i5ip18dWDkej2zd5HnP2heWQg/F3VgT/q7n/G+AxDek0LmbXjLW9r\nal32X505vOV75zuMhxdc4oVaedKH38/h9+U3cPLJKt+jkbUem/xEFMKXFXlPtpnI\n8TPgzGM3jDlG+sTvMbyPIbrHzyYDywqb6OeTRUmO2+C6wwkCQQD/DijkfV4V6TUY\n3T+0TaMcltFHz6BWp66BSYDtYoqH4aAR7jexGoGX8qQCeeLX1sCFPO5cA0hnAgZD\nVXF1VU97AkEA59KhBcN0v3DaJ7gd32q6/a8P8lpy6w0P5nRD7QUqeIm/oph/SYIV\nWO+0FS3pL16e5GKn2Yl47+0eC9I32DHEHQJBAKyfpMWgpEEoKau+cxNRSIhc+yAj\nQl3j95PBb+U6wI/fATuhg0f2rKdurdqPLBzxWDPVXW4hOqudDygbeEL1jmkCQBUm\nPzCCa3VHu29iOb93QkYAoajPnapaD7hLpSLLlNtYXdZcqUgwiPgLLle8T4jVzhMx\n+PQ8uX7SGCql7BhaOfUCQQD9vDAKdkxejS72vzjQk3m57chV4dLKeKzwTjyovJ/f\nk0hbgsZlvYkSwL6iwDTWoLAhnS3B+6GAPm63Z1XzMZkc\n-----END RSA PRIVATE KEY-----\n",
    "-----BEGIN RSA PRIVATE KEY-----\nMIICXgIBAAKBgQC9A6x9bm1jj38qIEEHxGb+E0eDpr+bF+yojEA+t5oxW5JmSHrG\nV+40zUpO9plSIKXpbt8VjGfa/WtN3MFUmmaIfD1PdR+jRayJ6laqJCzn3sMWahAR\nigBHuK8YEC8hZwP/1XSiGpWnMxvqM4TqURkWk245Moq+4SbnlrZhZp/JswIDAQAB\nAoGBAKTdq3rM80VASR8pew+XVG6RynMe40oYmCh8DR2ncCtVQGFPHygaUoBkAEjX\n9+wW5iCywIs/KOdu3EXSJB/zfTJV2r2ALe25e2pmB0AxWVh5IM2WN4SV09xHdkuO\nCBcmH2CZE6mvab1gGkZGiZzAdVRD3GCREkbN3fcAnAfCZNDBAkEA80qVWLxv8gCQ\ncSDQblJ6ggIHtF3gotjnaNTn5CfyH7AV5jvSfkOwOASqae0jq7Jb07ArLnVYTfEy\n9dIu38KXewJBAMbjRUjjCiogJKyPg8uOrmmgzR2I8SAUnIoqrWckzuB5zmrgcyny\nJIIkLAZ/tB1JQj2LjhcPHRf/iBorVGh2ZSkCQQC6d7Gbv2G1g8UxT8swozqOJmwt\nS75+UeybJoNNFWi37Mf8HGGqsMqBROIwKbcrQ5qp1t5hz0KNCo7aZevTSFu9AkEA\nviRDdeZRLmrihPMDvlUfW662ynjEhbYO3mzksMpY2fS5qiYBE+YCj0UDrgbi7GjA\nYlSMOHFjkDDlLpekL+aY2QJAUYO9hFglFrOBr9EkbvqhXSpEwCDjnZfxlo0XGogt\nP0F/s/xL4f5qAb8+TmWpQzKvpgO3yhScsuHZFpz7N9GyWQ==\n-----END RSA PRIVATE KEY-----\n",
    "-----BEGIN RSA PRIVATE KEY-----\nMIICXQIBAAKBgQCZSZfMD3DxlStB/BnwCzoCMeTV7TZPFDMNRhdrPgaEkZj3ZysJ\nVtM6XL2bGWtqZF7zQ+Nya88YjYZuNIEClYlcdxWH9DBUPyx82ZL7+OHFXI9tN2IF\n0rry3PuIydws7B/O6xHmJ+8S6YvAr1/52ShyGrhhRdJlzDIt8UIfGw9CiwIDAQAB\nAoGAThEl5v5CNjcTRdK/3vnIvE9uzOi3jQSrj2oQCUUYirGgJvf6+hGnGAUdZ31F\nsHSXyurbTm3LliSVv1CsF4XS42PTWbEVHesgks5Cg50LUDwg4IRiBfYk63u+LrNV\n6StNP0OoVVR6UGyK+rq3sbsvQ15vVVf4iUgiitciBDdPXFkCQQDIu6B4RsIdsJTA\njJjNSF021GkTMN3TzBadXn3RNTng9oWUxiopXJaoxYp7KHPjRu7ESfb7yvQHWmq+\ncFWN67yVAkEAw33Xd0IY754tLqrHSCud8t7GtfKY8y7/1P0DeUmzsCtgQ2hnnG4j\nYePYqd7mtc5hQyi0Zs7C80FLJqIN9QYanwJBAKw6yHHKjG16//bB661fJJOR5uIP\ncJV0LAc0dxGU8KdD/dNrv+sjRSVj8PDBAcYFK4KB0Ae02HKisqnZqp6NoI0CQBMF\nprajBtwiDxFwaq26GMduJ/XCYmGfXCN0bycZJdPplJdajGJrUSQQUJ/O4bIlH8+y\nIUOzsMKMwuxCbos+Cc8CQQCj4xngvWoJ9RE13UL5kisNKhMPx4Aeata7oxVHKkLE\n2pljac28NV1HVUQt+HDOs2EI0yzY/sy5o0kr2Kj1KfVx\n-----END RSA PRIVATE KEY-----\n",
    "-----BEGIN RSA PRIVATE KEY-----\nMIICXQIBAAKBgQCZMsDZLTor+8D3nkjXgO5trJQmYmln12GT2wWM6YAKmeVBZNfL\nvcEg9tTZkwYEkc3CqQ5QwdAK5GgkKsAnhTxN7uRDF6huWcL4WxqHQ5qnEE+gsbfP\nTBKm8fZkWCEO6kiKzkKE2+D/RtmSZzUacYo/FVm6TUyMynK0Iuy5Nynv3wIDAQAB\nAoGBAJYKSSnqy8BsDu/1jC3UTrAHiAmX9NgI775ZkjQSNJ8tXoUPePJIZDAezxRQ\nlGJBUp5F6IlbaKBiV0SkwhFywj2lv4hgJW1ALyFMvnIflQpWRXA0L5BIhqB1zB+8\nMGL+mbcWTgEf4IqdGUXlMEy97oQ5tqLBY0LNBcizhtopwSARAkEAx46lqNd7b9iK\nYNd6viEzbcfBR5U6evn3obDh8esN/OVcIWehPnpSdhLrpcQDR00Wi/s/uOKMaB1f\nRa9uPcEZlQJBAMSHY8suOWYAaGTx46n81pL4CGixNHbmH7J+54k8lnb6Cog8sfWq\nd9O0NHxiu4S3BQHGkw1yPaUa3M7Rsd9ujqMCQQCLs9lVckT/7+AwG6naIPQYDpfI\nvTfLj+NEVshWy+9m9EqjOCEx1ACWmHhP/AEvkVAPfz0E+dTBro5cAoxyvxRhAkBE\nGHVnjViuEy4Y7AdqewUOX4rqW5xGJm6NNpObZbbs+q5zjjRLXwmt/R7CiqNW1OOT\nPe7uFctuTeR8dQQg2vnpAkBq1HwXzq5Y1bS/h2Y1K3p82xLmatBtZAa+2VnywJ33\nDV3MWZglNnLph+ycFRY5qKmY3XbETD/JRi8XKgHVu1R2\n-----END RSA PRIVATE KEY-----\n",
];

/// RSA-2048 keys (PKCS#1, `openssl genrsa -traditional 2048`).
const PEMS_2048: [&str; 4] = [
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEogIBAAKCAQEAqwJZouVwDm0VUdhs9SUG+SMKmxkZ+msq+HFmT4mDh8toIf/+\n6aiDr084l/8dpSLYAyw1sFMSpng7LjTNkn1T/6QgRUkepKjOtsdSgrfBn9n9SCoe\nrvlUNV/vqyFYpuuf9Wx1Q9OdLnwR046s1IyN9MQxEnv5tJcfo6ecUYILu4QNg36Q\nf8HeQHUZy0HLS+HxrY4VmBnNtlTRF1Z3lIqHmWj/SrdfD4mdFzRkBSWe13L5WhiQ\nB8pFwgDc+vdHxUXUUyyRFuORLOFy7kp+YL+rYw/3oI0oL3hOue2smwiZzj4L/0Ys\nBC3EjnteGREv8QU2lQsFqtfi35tkJFD78TkEQwIDAQABAoIBAE3XRoT7Kjwu1DcK\nrGIUJi3ukOvTi7ss4ATx3W/T+Q6tfKuJUvf6EGMSzQCHDG/4QdqD27Z0wfcLoGii\neXa2XK9vfo77PxsVie6yITFGQrkoKX4ZShk8fePD1R0RE0D73TaCVYh3wUMBD748\nYhhoGE/zpCC1VQ8qgSjl6SZC62NBdL1sed/m+AsooGFc0GP9PtXgufyESxpU3Djk\nVU1N3FG77TLw6zIDLHQuBL/Br/nQCudLhlvhNcsXUb+dImiDutHl2xi5/qk4YMc1\njsvugKDehR3wky/GcB76fA4tlkEQsIWS8aLGrhFyghwfqXK3dpJ7XZsiDYemZ1pv\nJew+yX0CgYEA1ZdF/DW0HMyplDC5uscLBJ2Sxd2dP2Wt7K43ylD+qVL8trE7xIXf\nY4CeOu88cpdQz7xSlvHnmyrwgJmcbPSxy2tap69dm8aA4dtpc7rff3c6pJk9gIyN\nsuS/FAlaBSM9Uu+PcDjTAF8wIyawm3hqG/Y4aoG8wuxdr5jvLg8jpD0CgYEAzPaq\nzAGD78zSmfALeKudMfz9fyF5tLDKiQCUQUkY4zVqpAulb/25A/jZgkv+AKXTD3hC\ngKliW6v2mJ+L2LYEaVBNi8H4yxhsF3oae2abEpKN1gNcrAOmlFrKkb/o0eRBR/EP\nlKbvpPfkDdLupHAnYSk8GR7NbjUsbAlDuQ+bUn8CgYAQW3xtm0NG7VmTUsP2jOXI\nHbUu2BEB2Oyf8putL9TA7O0TpLEaFNKN0TzM8KNldzcmIZsFmlMNbBVtE9aJ9Zdk\nJ72Sl/iIRIR8R4xk44vYPC5OirnODXWQnLoRc8HkINXCczw98Owf3CpYls7xqSAf\nMhUR+wuUtftaxlCS62/kVQKBgBbpZAJWEQeXX9txZ/bfSD00SKoTdeVq9dkGxYve\nvfd4GymnW6D/PdVh1f6ovAYag1NxYA294Y7Z1EEPZLSe9DNJlMGQt10Mp9if/6HX\nwHH9C/nmek+IQPDIjWhpiX8dAucl3VYCqztHsqiQ8bhUCTLlRyCPvusY6pRRHM7t\nHbHFAoGAHqxA4RGHqn45zOm0J95VNDTMfyMeTKR05kcjZsD6DU/U3TuMcKqyUrxv\njgF0LdUDZ/dNYYAKcTYwGET6m3Q0ZQ0nwWGhu6rqP2EMQsL+rj/WoFyD6sln6UFy\non7bOUCF68DPMvDvmtlMMf8IKQCXKyGPL7wtlSsaw5mXBcA2cXc=\n-----END RSA PRIVATE KEY-----\n",
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA2xEqXshkmt+9/9cDV6ouePw8YphA8dJgXznTj1dzU76/UTd+\n84Kb6bawHWt/vT8Mys5qiHd9jXCARGNGt6Z2CrygssC0b3rQ0kmTWz3FyEg+oX3w\n7kESabJLiXl3Dm57L0cRP5xymhawbLcjRyAzsDS0qcRsU4ITMQ2zrMy3H1+KqWb4\nog47nHSQkO0jy1kkZKrNTgxmLcSij1rMI+td/HzjwbtK+UdiTrbcX7Gh/vWKXsqI\nWy0ug3ZnFyOPgdb5JymFkHzjPXhMpXV53nXGmDvhqXXBkFbgRN9GzAYGwDGaEi6Q\nnkuYX3+mdIYursJjQVk0v8skMpaD1fGKc8NWkwIDAQABAoIBAAfwwdforJjehk0J\nNqJNVVzmS6wJN8VsKjkZZ/04nsII1ndzqwLZl5wrlouic2FhMS4CuGLU7fScANI5\nxPzwKDQwbSS9jmzCB2Kv7wruHMarM7X30i1Yp3m0UD+d6v5Xa9ilW08ydQb3zpJK\nOxmfZbA74NaMe561RsvO4tXfH74fz8LEX94Nf8O6O4xVvMNGovb0xRftDDmPZJyZ\nE6/jJTFMcZgRfW476Ly2SfY/1KGbPPJxmj9a6dGENbLgG9JD3byQygQpwQlL1VhW\nJ1qS74dBSneqy9LSMmCtVKKjD9MJ6kLaue7+1Tw+WQD2q+gxb3FlpyZbf3FhNQqT\ng9thLy0CgYEA82j5/uS1AlSK7xHM+ZqFr/lZ57367xJZnI7/+xMAh95lN7QJ+F8r\ncgt6iHxmBBcJePxqOswFSxPJnDZH/P6Cs+PXKmujrw4hrErly4DC+KeHSS3JB9iG\n+2XWO1kwvYmIxgpO5hz0zapbSWIPsMw6MAKCQt+GzRzEA+elZRYrbO0CgYEA5mXc\nLSb5cFNIRjX5oK3K3IMNpRjc6abNO/5XOsoGXLlscTYmaVEPfpwIXYdkhhillSnY\n35Z3dJsMTferz3f+U4yne6QJuzYWfWtD5oq2uhcymtvGNptp0UVx+dUKlLF84YbF\nO217MS+AldTovQ0CVtOZ8ZsCyR2egsGRcnvs4X8CgYAdA7JpE9IPyQwWm0SXrDer\nVknFOfwja0iLRPB2eTli+LuP/EID/TQsj/m3Mzzl1+klJtFy2Mb4wA8UM9Q48A2c\na9hGEjacs06IPxVNQLf889tIedCwwrq0VNtIj8UjkrVfBfOJsoHr0ha3lJzSMkXt\nWx8z4XksEfW7kW1Bs3bRsQKBgQDIatjxihK3zCp1sOQaCrQJyBKpiAw7T/b99gyJ\nPk30gPO9M36MZJAW8cIxIeKm52+6ZrGaJXh6PZmhhQ22psncgeD7I8G3UaCUrydc\nt1OmYyGJJh6xR9XvzfoMem7+07ovMJ4HSQA90/WF4LQoJ9XeE6m5Sr9MlXBai+lq\n7jQsHwKBgAKxeIy70LKnJ2KpZw2Bjhuf16pYkHZAZu3104NlywvLQyJk6J0B8qD0\nlvtB2qD8Hw+iTsvenNJgAQVkNie7+g3VD4kwpxZf7r+i5AQUo6Njipq/eo1yt8sD\nM1npSdeJvdfemohApJL6WWKlbELd8zfEqlvlT6TmQkWYD1qJqqr6\n-----END RSA PRIVATE KEY-----\n",
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEArAoTdARF8A2DJHVg+5jLVwAAA8ObvqiIutf2vui8JQbtplBZ\nfHMbIRvfu3obwgfw3pxkSvbJr/c7anA3OrDPXcARur8rDqusnXAftK6zic8Uu0gl\nv/RnBWnyBMAQz0f+Nb2QoQRKCQFhm29+8vT0wjqbdNsjjaPU/gZYmEIF+L3Whd4i\nSTJS9CTEsB2Qem8eVhSLTUQbGhyzREZN17b5vhhgHEq3/oBKZDzgegZl7b8EdmPH\nmbUseMTe3pzsDXz87HO0FpM+qb6Bnte8lamJN3pWsuE0kviqCAGsPwczOx1L+fLx\nHuFUwNEv8JkuOKtj3sOojYfQSBo7SBLRKmZbZQIDAQABAoIBAEo0nmdwYGpGqcZU\nCtz67to72cXF3avDLhbJiFiYMm8WKfOOvMp9K7qAN2S6Krbqje63LltXT29jCHHE\nrU3XbdpWOk9+nafaTL4r2sEoibBrbdnKKN4/ISCorgd2gMmnl/K+LWAGZZi0y9Er\nqmpJVjlg5iTlUNSLUhevzQ7/i2vaX47Q+A9yTS46H+MZfxe6nPpO8Pb4BePdvXKQ\ngJM9NzvmOEWG6ehWBUbg65HkZDogomgKc0mcsVja+fV1GYkIvxHI+lpWVX8t+iDC\nwmb1F/3wbPLT0M1VWgKfi4SrxbvFmwWQfOtQFRnWKcNI2th7M+Pa3fzj9Tervs2K\nAPQhsBECgYEA8bzNjyFAMVVSVetG8TyCoSKciP0Dq7v0F/+RyGDywRQ9wwJ4jShC\nHLv0g02UDh6AqUbRqnFfj7l1e2CD9OubDlinHAW2jUZLiLn1laP92XbCf/Y4eSsk\nQdVimcvk50bL3F6ZVWTBPIFIBmrXErADH9CSjTVZao7QQlo7wtm4C98CgYEAtjCN\n0FX3TkfaT37yyPYu9HsMrotvFa0rBYyFZppSq7P71Ibmo7B2DveFvh8nDIME3N05\nZ9oyqjV44G16mZ33vP+/loz2MlWwQKqpil2EI3/fQuki2VEY6fRyGQpqLlOhnLbQ\nE6s6WpgvLwP6RdUJYYPAk4EGbCOQQxsKi30IQTsCgYBTiAAn8z9xTKBU3CX5egVR\nlNouY+9+ykXAfSls6kM4ALyOxC3P6RdfQnttW8NLVbLzy2rr0J1K1rUH2wP9/+Pm\ngy/LeRXpn16+cjOwb6hqGqV+/h/pjsTKkuetaU1Bta8ACRhG77fuJmYzAXwsEvIh\nbjsV3Fd3gL3qD7AS1pTIVQKBgBTE3jXExwd+e22ajDTKk7m9GUoAjS5Mal4ckcyL\nhScbwnaM1lgMsrisEOwGgx4TBYfkFDo5jpMGu3viHxrJ/kbmZMHV2e8NA6Wrjt4+\nIOUnG512FEnvy8ZH3oXqQQZ89Cx4TqofV+yh8qcKbgpt6b7bFSX7jG7hcv2jZIVY\nQIunAoGBAKNJ8nzttQJSAEG4gk/QGufiXg4xUj3AsNLLC4DxZKkTP2ln/lgq8q7r\nT35+bU9OOpfLLB4C3hMMAwEQIBC83FBbiBAiX89I9Xr0ZPCCue6CyVsJbL0tZP7W\n8POP1mA7A/A3OsXFF74UfAB70elymYHURE3s317jH7pVLt2PQSuw\n-----END RSA PRIVATE KEY-----\n",
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA2vEL6o3Sr7b4qKAf77Xz/cBvmGhvzLhE4UD0GKhFhzx8Y2PS\nnspXXzW65FYB6s+gtPR9D8ISDgpNV0l7q5I6Tt7RhixWTQ5PqiucZBvh/0BJEmv8\nQooJMNV8I6oDYsvEFHA8oHOAKndBX20PSbC9VwpWuWV8e4IxNn51GHONJlJTR8GH\nSJMxP0ubAdVDHF+tKbAnTixZJkXTCNjdbV3DAzkfqI7dvT4TjpSt4l0foGb3a5CI\nQYQFvSzlETROxfQX7TuTDTtEJh0Ceube5n4/YgEo7VZN5yiPv548++nrji1b3Iox\nAiyTDw7RHsGE+GuZb8MWwYBdEUGT7LSlUBnYhQIDAQABAoIBAC/WAMODryfDM3ss\nWS33tFKZ7AgBsYOqMyqAFZUZlu9gUNEqa0dUcFiWFbpz7EFQkg1Xace6oFU+/Pz4\nSjQHZAP9fQvyvfxiBxfoJWheCzfI5O5Id7pWDIIF8vSb3deFK9dHWoe4FKWynq7p\n1jBElGnjEWW6fcNCg9wjLxRjktBvPtxlSrNEIgvYmvBVUm4chAQi0RX4kx67X3Vq\n/Id74V/6Mg+na+ZiMVbYOlJ/vq+cABknMa3BR5s2ZfQlLxeHuKP12A+w67RCEUwr\nkygk1dt7eWzCFvzyVg8lKSQcXeSx08lUElV6UJCfGfWSG5ZhJXAuFFlG+Twqeqs4\nKzNUavUCgYEA7ezpCV7kxxmYWEPH+njmz/I670ULAX1I5ubO35p1HngFld/PFlo0\nLjEhTMLI5iViPwQmsgY9fkscolOrHmqxG5XiEL297ICQiCsi+mgFGkI/j8AUM1t1\nAWoiWLyxRLFeJAXV3yTuXluSVe5hNW7QICHZUoj8T/Q6/1IRNzm8U6sCgYEA65Lx\n935TKHHZr2PjAXUGcMFEY6B5+0uMBGpd6dPUw7njrMrr8kM7PsGPLV7U1WQoW2p7\nt9tuMdXTGI4+xmWLiHEMz3/njPBWgtFCpOfiUsMD7by5BGA7vDgR9RDMzz+lWzeW\n86KynGoel3Xi0dyoMEiKVx7ohLL5+q1J1YpZVI8CgYEA26DTKYxIYaY15FyFcKhE\nYHa5gn/YfgJ51nP/SZfaP0sJ1OTp1DdmbbF6jNJOA21E+OjLE5EBGOEbSJk1n/lb\nDhzYtx2AAZ5YTOqM+lwlQa0f4YGs5A+rvaeMlx9v//o+7b/ZQohj5gRf3CUV5O4q\n/05fv3mmd+P6xg+qxrDsMMsCgYA5pEcYrAxlBRai1+of3SaqSGAXkJjIaH/mRLCe\nGnshOUcAbNa2/MRuYqZKD748SLmnRLLpFgQspYl1pLiviwFNbXwY+c8KqXRBpjqM\nZ0D1x0oazebnrzRupbmfIXE79PLdEwkYrGLP6xd5MBtEBp4Q0m8nSiTS84g/Uk+S\ntLuO+QKBgQCcck/g0wrF8WPjgAm1oR/Qm35Nfuq+mYxTsNDdfKdw+BNxGHqW9Jhi\nq5gJygAf2z2S7uqu7+EjvmXt+F/4Bo/KWJqvBGBChzq1iJU4yK/+lCRLalKtNZDq\nVBwJ0ns78NbVyRscI/NhCKHWCkiTSYQBZMPrE1PzefZlLuOZbCwRbg==\n-----END RSA PRIVATE KEY-----\n",
];

/// splitmix64: derives independent seeds from a base seed and an index.
pub fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// xorshift64*: small, fast, good enough to pick schedules.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(splitmix64(seed) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `pct` percent.
    pub fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
}

tokio::task_local! {
    /// The operation (index into `History::ops`) the current task is running.
    pub static OP: usize;
}

/// The operation the calling task is running, if any.
pub fn current_op() -> Option<usize> {
    OP.try_with(|o| *o).ok()
}

/// Which key wraps the account key in a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wrap {
    /// The customer key at this version.
    Customer(String),
    Platform,
    Other(String),
    None,
}

impl Wrap {
    pub fn of(rec: &AccountRecord) -> Self {
        match &rec.account_key {
            None => Wrap::None,
            Some(w) if w.role == KeyRole::Customer => Wrap::Customer(w.wrapped.key_version.clone()),
            Some(w) if w.role == KeyRole::Platform => Wrap::Platform,
            Some(w) => Wrap::Other(format!("{:?}", w.role)),
        }
    }
}

impl fmt::Display for Wrap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Wrap::Customer(v) => write!(f, "cmk/v{v}"),
            Wrap::Platform => f.write_str("platform"),
            Wrap::Other(s) => f.write_str(s),
            Wrap::None => f.write_str("none"),
        }
    }
}

/// The ground truth of the tenant's vault as the customer left it: whether the service
/// identity has access, whether the test's wrapper cuts every call, which versions are
/// enabled (index = version - 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truth {
    pub access: bool,
    pub cut: bool,
    pub enabled: Vec<bool>,
}

impl Truth {
    /// Whether the customer key at `version` works for the service now.
    pub fn accessible(&self, version: &str) -> bool {
        let enabled = version
            .parse::<usize>()
            .ok()
            .and_then(|v| v.checked_sub(1))
            .and_then(|i| self.enabled.get(i).copied())
            .unwrap_or(false);
        self.access && !self.cut && enabled
    }
}

impl fmt::Display for Truth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "access={} cut={} enabled=[", self.access, self.cut)?;
        for (i, e) in self.enabled.iter().enumerate() {
            write!(
                f,
                "{}v{}{}",
                if i > 0 { " " } else { "" },
                i + 1,
                if *e { "" } else { "(off)" }
            )?;
        }
        f.write_str("]")
    }
}

/// One logged event.
#[derive(Clone, Debug)]
pub enum Event {
    OpStart {
        op: usize,
    },
    OpEnd {
        op: usize,
    },
    /// A successful `create`/`update` of the store (the persisted record changed).
    Commit {
        mgr: usize,
        op: Option<usize>,
        revision: u64,
        epoch: u64,
        state: StateKind,
        wrap: Wrap,
    },
    StoreRead {
        mgr: usize,
        op: Option<usize>,
        record: Option<(u64, StateKind, Wrap)>,
    },
    /// A call to the tenant's vault (through the wrapper).
    Provider {
        mgr: usize,
        op: Option<usize>,
        call: &'static str,
        version: Option<String>,
        result: Result<(), ProviderErrorKind>,
    },
    /// The customer changed the vault.
    Vault {
        op: Option<usize>,
        truth: Truth,
    },
    Note(String),
}

#[derive(Clone, Debug)]
pub struct Entry {
    pub step: u64,
    pub event: Event,
}

/// How an operation ended.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// Success, with what it returned (a state for `check`/`refresh`).
    Ok {
        state: Option<StateKind>,
        detail: String,
    },
    Err(String),
}

/// One operation of a schedule.
#[derive(Clone, Debug)]
pub struct OpRec {
    pub task: usize,
    pub mgr: Option<usize>,
    pub what: String,
    pub data: bool,
    pub probe: bool,
    pub start: u64,
    pub end: Option<u64>,
    pub outcome: Option<Outcome>,
}

impl OpRec {
    pub fn succeeded(&self) -> bool {
        matches!(self.outcome, Some(Outcome::Ok { .. }))
    }
}

#[derive(Default, Debug)]
pub struct History {
    pub entries: Vec<Entry>,
    pub ops: Vec<OpRec>,
    pub violations: Vec<String>,
}

/// The state one schedule shares between its tasks and wrappers.
pub struct Sched {
    rng: Mutex<Rng>,
    step: AtomicU64,
    max_yields: u64,
    hist: Mutex<History>,
    /// The test's wrapper answers `Forbidden` to every tenant-vault call while set.
    pub cut: AtomicBool,
    /// Percent of tenant-vault calls that fail transiently (`Unavailable`).
    pub transient_pct: AtomicU64,
}

impl fmt::Debug for Sched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sched").finish_non_exhaustive()
    }
}

impl Sched {
    pub fn new(seed: u64, max_yields: u64) -> Arc<Self> {
        Arc::new(Self {
            rng: Mutex::new(Rng::new(seed)),
            step: AtomicU64::new(0),
            max_yields,
            hist: Mutex::new(History::default()),
            cut: AtomicBool::new(false),
            transient_pct: AtomicU64::new(0),
        })
    }

    pub fn hist(&self) -> MutexGuard<'_, History> {
        self.hist.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn rng(&self) -> MutexGuard<'_, Rng> {
        self.rng.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn below(&self, n: u64) -> u64 {
        self.rng().below(n)
    }

    pub fn chance(&self, pct: u64) -> bool {
        self.rng().chance(pct)
    }

    pub fn step(&self) -> u64 {
        self.step.load(Ordering::SeqCst)
    }

    fn next_step(&self) -> u64 {
        self.step.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// A yield point: yields 0..=max_yields times (drawn from the seed), each a step.
    pub async fn pause(&self) {
        let n = self.below(self.max_yields + 1);
        for _ in 0..n {
            self.next_step();
            tokio::task::yield_now().await;
        }
    }

    /// Logs `event` at a new step; returns the step.
    pub fn log(&self, event: Event) -> u64 {
        let step = self.next_step();
        self.hist().entries.push(Entry { step, event });
        step
    }

    /// Starts an operation: returns its index.
    pub fn begin_op(
        &self,
        task: usize,
        mgr: Option<usize>,
        what: String,
        data: bool,
        probe: bool,
    ) -> usize {
        let step = self.next_step();
        let mut h = self.hist();
        let op = h.ops.len();
        h.ops.push(OpRec {
            task,
            mgr,
            what,
            data,
            probe,
            start: step,
            end: None,
            outcome: None,
        });
        h.entries.push(Entry {
            step,
            event: Event::OpStart { op },
        });
        op
    }

    pub fn end_op(&self, op: usize, outcome: Outcome) {
        let step = self.next_step();
        let mut h = self.hist();
        h.ops[op].end = Some(step);
        h.ops[op].outcome = Some(outcome);
        h.entries.push(Entry {
            step,
            event: Event::OpEnd { op },
        });
    }

    pub fn violation(&self, v: String) {
        let step = self.next_step();
        let mut h = self.hist();
        h.entries.push(Entry {
            step,
            event: Event::Note(format!("VIOLATION: {v}")),
        });
        h.violations.push(v);
    }

    fn transient(&self) -> bool {
        let pct = self.transient_pct.load(Ordering::SeqCst);
        pct > 0 && self.chance(pct)
    }
}

/// The tenant vault's provider for one manager, with seeded yields around every call, the
/// test's cut, injected transient failures, and a log of every call's outcome.
pub struct YieldingProvider {
    pub inner: Arc<dyn KeyProvider>,
    pub mgr: usize,
    pub sched: Arc<Sched>,
    /// Whether the cut and transient faults apply (the tenant vault) or not (platform key).
    pub faults: bool,
    /// Whether calls are logged.
    pub log: bool,
}

impl fmt::Debug for YieldingProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("YieldingProvider")
            .field("mgr", &self.mgr)
            .finish_non_exhaustive()
    }
}

impl YieldingProvider {
    async fn around<T: Observed>(
        &self,
        call: &'static str,
        version: Option<String>,
        f: impl Future<Output = Result<T, ProviderError>>,
    ) -> Result<T, ProviderError> {
        self.sched.pause().await;
        let r = if self.faults && self.sched.cut.load(Ordering::SeqCst) {
            Err(ProviderError::new(
                ProviderErrorKind::Forbidden,
                "cut by the test's wrapper",
            ))
        } else if self.faults && self.sched.transient() {
            Err(ProviderError::new(
                ProviderErrorKind::Unavailable,
                "injected outage",
            ))
        } else {
            f.await
        };
        if self.log {
            self.sched.log(Event::Provider {
                mgr: self.mgr,
                op: current_op(),
                call,
                version,
                result: r.as_ref().map_err(|e| e.kind()).and_then(|v| observe(v)),
            });
        }
        self.sched.pause().await;
        r
    }
}

/// What a successful call tells the caller: properties of a disabled version are an
/// observation of `KeyDisabled` (the probe turns them into that failure itself).
trait Observed {
    fn observed(&self) -> Result<(), ProviderErrorKind> {
        Ok(())
    }
}

impl Observed for KeyProperties {
    fn observed(&self) -> Result<(), ProviderErrorKind> {
        if self.enabled {
            Ok(())
        } else {
            Err(ProviderErrorKind::KeyDisabled)
        }
    }
}
impl Observed for VaultProperties {}
impl Observed for WrappedKey {}
impl Observed for SecretBytes {}

fn observe<T: Observed>(v: &T) -> Result<(), ProviderErrorKind> {
    v.observed()
}

#[async_trait]
impl KeyProvider for YieldingProvider {
    async fn vault_properties(&self) -> Result<VaultProperties, ProviderError> {
        self.around("vault_properties", None, self.inner.vault_properties())
            .await
    }

    async fn key_properties(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<KeyProperties, ProviderError> {
        self.around(
            "key_properties",
            version.map(str::to_owned),
            self.inner.key_properties(name, version),
        )
        .await
    }

    async fn wrap_key(
        &self,
        name: &str,
        version: Option<&str>,
        algorithm: WrapAlgorithm,
        key: &[u8],
    ) -> Result<WrappedKey, ProviderError> {
        self.around(
            "wrap_key",
            version.map(str::to_owned),
            self.inner.wrap_key(name, version, algorithm, key),
        )
        .await
    }

    async fn unwrap_key(&self, wrapped: &WrappedKey) -> Result<SecretBytes, ProviderError> {
        self.around(
            "unwrap_key",
            Some(wrapped.key_version.clone()),
            self.inner.unwrap_key(wrapped),
        )
        .await
    }
}

/// One manager's view of the shared store: seeded yields around every call, a log of every
/// read and commit, and change hints forwarded (or refused, for the no-hints variant).
pub struct YieldingStore {
    pub inner: Arc<InMemoryAccountStore>,
    pub mgr: usize,
    pub sched: Arc<Sched>,
    pub hints: bool,
}

impl fmt::Debug for YieldingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("YieldingStore")
            .field("mgr", &self.mgr)
            .finish_non_exhaustive()
    }
}

impl YieldingStore {
    fn committed(&self, record: &AccountRecord) {
        self.sched.log(Event::Commit {
            mgr: self.mgr,
            op: current_op(),
            revision: record.revision,
            epoch: record.epoch,
            state: record.state.kind(),
            wrap: Wrap::of(record),
        });
    }
}

#[async_trait]
impl AccountStore for YieldingStore {
    async fn get(&self, id: &AccountId) -> Result<Option<AccountRecord>, Error> {
        self.sched.pause().await;
        let r = self.inner.get(id).await;
        if let Ok(rec) = &r {
            self.sched.log(Event::StoreRead {
                mgr: self.mgr,
                op: current_op(),
                record: rec
                    .as_ref()
                    .map(|r| (r.revision, r.state.kind(), Wrap::of(r))),
            });
        }
        self.sched.pause().await;
        r
    }

    async fn list(&self) -> Result<Vec<AccountRecord>, Error> {
        self.sched.pause().await;
        let r = self.inner.list().await;
        self.sched.pause().await;
        r
    }

    async fn list_page(
        &self,
        after: Option<&AccountId>,
        limit: usize,
    ) -> Result<Vec<AccountRecord>, Error> {
        self.sched.pause().await;
        let r = self.inner.list_page(after, limit).await;
        self.sched.pause().await;
        r
    }

    async fn create(&self, record: &AccountRecord) -> Result<(), Error> {
        self.sched.pause().await;
        let r = self.inner.create(record).await;
        if r.is_ok() {
            self.committed(record);
        }
        self.sched.pause().await;
        r
    }

    async fn update(&self, record: &AccountRecord) -> Result<(), Error> {
        self.sched.pause().await;
        let r = self.inner.update(record).await;
        if r.is_ok() {
            self.committed(record);
        }
        self.sched.pause().await;
        r
    }

    async fn update_unless_probed_after(
        &self,
        record: &AccountRecord,
        after: SystemTime,
    ) -> Result<(), Error> {
        self.sched.pause().await;
        let r = self.inner.update_unless_probed_after(record, after).await;
        if r.is_ok() {
            self.committed(record);
        }
        self.sched.pause().await;
        r
    }

    async fn accounts_using(
        &self,
        vault: &str,
        name: &str,
        version: &str,
    ) -> Result<Vec<AccountId>, Error> {
        self.sched.pause().await;
        let r = self.inner.accounts_using(vault, name, version).await;
        self.sched.pause().await;
        r
    }

    async fn record_probe(&self, id: &AccountId, at: SystemTime) -> Result<(), Error> {
        self.sched.pause().await;
        let r = self.inner.record_probe(id, at).await;
        self.sched.pause().await;
        r
    }

    async fn purge_deleted(&self, before: SystemTime) -> Result<u64, Error> {
        self.inner.purge_deleted(before).await
    }

    fn subscribe(&self, listener: Weak<dyn ChangeListener>) -> bool {
        self.hints && self.inner.subscribe(listener)
    }
}
