/** Solve an ALTCHA challenge as the widget would, and encode the solution as the API takes it. */
export async function solveChallenge(challenge: {
  algorithm: string;
  challenge: string;
  salt: string;
  signature: string;
  maxnumber: number;
}): Promise<string> {
  const { solveChallenge: solve } = await import("altcha-lib/v1");
  const solution = await solve(challenge.challenge, challenge.salt, challenge.algorithm, challenge.maxnumber)
    .promise;
  return Buffer.from(
    JSON.stringify({
      algorithm: challenge.algorithm,
      challenge: challenge.challenge,
      number: solution?.number,
      salt: challenge.salt,
      signature: challenge.signature,
    }),
  ).toString("base64");
}
