import { verifySync, generateSync, generateSecret, generateURI } from "otplib";
const secret = new TextEncoder().encode("12345678901234567890");
console.log(generateSync({ secret, epoch: 59, digits: 8 }));
console.log(verifySync({ secret, token: "94287082", epoch: 59, digits: 8 }));
console.log(verifySync({ secret, token: "287082", epoch: 59+30, epochTolerance: 30 }));
console.log(verifySync({ secret, token: "287082", epoch: 59+30, epochTolerance: 30, afterTimeStep: 1 }));
try { console.log(verifySync({ secret, token: "287082", epoch: 59, epochTolerance: 30, afterTimeStep: 5 })); } catch (e) { console.log("throws", (e as Error).message); }
const s = generateSecret(); console.log(s, generateURI({ issuer: "Sekisho", label: "taro", secret: s }));
console.log(verifySync({ secret, token: "28708", epoch: 59 }));
